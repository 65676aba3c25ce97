"""Wire protocol: handshake, sealed frames, CBOR codec, error codes and the API schema.

Sans-I/O: nothing here awaits, touches a socket or opens a file (tests/test_layers.py
checks it). One session is a :class:`connection.Connection` (bytes in, typed events out,
bytes to send), driven by the gateway, the SDK, the benchmark's light receiver and (later)
federation's node links, so all of them share exactly the same code for the bytes they
exchange. Key files are node/keyfile.py; the admin socket's framing is node/adminframe.py.
"""
