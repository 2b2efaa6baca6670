"""Shared test setup: the numpy oracle importable as `oracle`, quiet Paddle, fresh seeds per test."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("GLOG_minloglevel", "2")
