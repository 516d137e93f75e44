"""Unit tests: pure logic, no servers, no processes, no kernel; each file runs in well under a second."""
