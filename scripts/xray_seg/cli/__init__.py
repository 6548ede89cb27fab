"""The ``xray-seg`` command."""
