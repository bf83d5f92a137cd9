"""Everything that touches the network on the orchestrator side: install, probe and batch
activities. They share their names, models and failure types with the workflows through
:mod:`contracts`; nothing here imports :mod:`workflows`.
"""
