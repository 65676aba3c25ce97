"""Cloud chats: per-chat signed, hash-chained event logs, membership, per-user sync state."""
