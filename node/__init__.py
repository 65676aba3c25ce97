"""The Fedgram node: one trio process holding a community's users, chats and media."""

__version__ = "0.1.0"
