"""The ledger core: the rules' Python side. Standard library only (tests/unit/test_rooms.py)."""
