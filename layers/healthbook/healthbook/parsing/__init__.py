"""Safe decoding of submitted bytes: hardened XML parsing and strict base64."""
