"""tollway's built-in policy, each concern a plain plugin on the same contract
third parties use (see ``proxy/hookspecs.py``)."""
