"""Stand-in for the model zoo bundle's ``scripts`` package, written for medood's tests (not the zoo's code)."""
