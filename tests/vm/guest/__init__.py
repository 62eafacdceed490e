"""Guest-side tests (see conftest.py); a package so that its conftest is not `conftest`."""
