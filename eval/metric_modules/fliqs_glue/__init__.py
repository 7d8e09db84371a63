"""The package marker makes setuptools install fliqs_glue.py; evaluate loads the script by path."""
