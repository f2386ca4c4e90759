"""Exports of a finished run for serving: each target one module in `targets/`, found by name."""
