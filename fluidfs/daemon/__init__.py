"""The mount daemon (run), starting it detached or in the foreground (spawn), its runtime record (record)."""
