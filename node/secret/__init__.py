"""Secret chats, the node's share: ciphertext queues per device, prekeys, TTL (issue 14).

The node stores and forwards opaque envelopes addressed to a device and never sees a key
that could open them (docs/secret-chats.md sections 1-4). ``store`` holds the SQL and the
``secret`` schema, ``service`` the ``secret.*`` handlers and what federation calls
(``deliver``, ``keys_for``), ``sweeper`` the TTL expiry.
"""
