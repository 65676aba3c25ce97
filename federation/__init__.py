"""Federation: nodes as data centers that peer, resolve each other's users, replicate the
logs of chats with members on several nodes, and forward posts to a chat's home.

Built on the node (which never imports it): ``fedgram run`` hands :class:`Federation` to
``Node.start``. See federation/service.py for the whole picture.
"""

from .service import Federation

__all__ = ["Federation"]
