"""Tools for testing SOLLOL and its plugins: an emulator toolkit, loopback servers, contract tests.

Users can run the emulators too, to test their own apps without a GPU.
"""
