"""`make faults`: hostile clients and children against a real server, one table (docs/faults.md)."""
