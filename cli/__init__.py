"""The `thinkrec` command: the top layer, above every stage it calls (cli/main.py)."""
