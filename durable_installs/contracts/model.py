"""The base of every contract model: attribute docstrings are the fields' descriptions.

A field's docstring (the string right under it) becomes its ``description`` in the model's
JSON Schema, which the documentation site's reference is generated from; ``tests/test_docs.py``
fails naming any field without one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ContractModel(BaseModel):
    """A pydantic model whose fields are described by the docstrings under them."""

    model_config = ConfigDict(use_attribute_docstrings=True)
