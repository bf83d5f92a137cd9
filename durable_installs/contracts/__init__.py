"""The contracts shared by workflows, activities, clients and other teams' code.

Everything that crosses a process boundary lives here, once: the names (:mod:`contracts.names`),
the inputs, results and statuses (:mod:`contracts.install`, :mod:`contracts.rollout`,
:mod:`contracts.activities`), the failure types (:mod:`contracts.failures`) and the search
attributes (:mod:`contracts.search_attributes`). ``workflows/`` and ``activities/`` both import
from here and never from each other; this package imports only :mod:`protocol` and libraries.
"""
