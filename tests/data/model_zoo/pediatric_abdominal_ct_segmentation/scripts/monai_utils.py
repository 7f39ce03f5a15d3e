"""Stand-in for the bundle's ``scripts.monai_utils``: the published inference config imports it (``imports``) but
uses nothing from it. Written for medood's tests; not the model zoo's code."""
