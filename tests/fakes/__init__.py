"""Protocol-faithful fake services on 127.0.0.1 for tests."""
