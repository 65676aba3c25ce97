"""Wire protocol: handshake, sealed frames, CBOR codec, error codes and the API schema.

Sans-I/O: nothing here touches a socket, so the gateway, the SDK and (later) federation
links share exactly the same code for the bytes they exchange.
"""
