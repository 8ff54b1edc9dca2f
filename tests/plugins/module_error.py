"""Fails while its module code runs."""
import json
raise RuntimeError("module level failure")
