"""Throw-away measurements that chose a design (each names the note it belongs to)."""
