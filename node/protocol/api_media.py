"""The media methods of the API schema (merged into METHODS by api.py)."""

from __future__ import annotations

from .errors import ErrorCode as E
from .schema import Bool, Bytes, Field, Float, Int, List, Method, Str, Struct

UPLOAD_ID = Str(1, 64, r"[A-Za-z0-9_-]+")
MEDIA_ID = Str(1, 64, r"[a-z0-9]+")
SHA256_HEX = Str(64, 64, r"[0-9a-f]{64}")
# a node's identity fingerprint (node/address.py NODE_ID_RE): base32 of a 20-byte digest
NODE_ID = Str(32, 32, r"[a-z2-7]{32}")
# the schema bound is the frame's; the node's configured part size is checked by the handler
PART_BYTES = Bytes(0, 1 << 20)

MediaInfo = Struct(
    {
        "media_id": Field(Str()),
        "sha256": Field(Str(), "hex"),
        "size": Field(Int()),
        "mime": Field(Str()),
        "name": Field(Str()),
        "width": Field(Int(), "images: pixels", False),
        "height": Field(Int(), "images: pixels", False),
        "created": Field(Float(), required=False),
        "opaque": Field(Bool(), "present (true) if uploaded as client-encrypted", False),
    },
    name="MediaInfo",
)

Chunk = Struct(
    {"data": Field(Bytes()), "size": Field(Int(), "whole file"), "eof": Field(Bool())},
    name="Chunk",
)

# media.info/download of a file held elsewhere (fetched through federation's fed.media)
FETCH_ERRORS = (
    E.MEDIA_NOT_FOUND,
    E.MEDIA_FORBIDDEN,
    E.MEDIA_FETCHING,
    E.PEER_UNREACHABLE,
    E.CHECKSUM_MISMATCH,
    E.FILE_TOO_BIG,
    E.DISK_FULL,
)

MEDIA_METHODS: list[Method] = [
    Method(
        "media.uploadPart",
        "Store one part of an upload (any order, any session of the same user). Parts are "
        "part_size bytes (media.uploadStatus tells it) except the last. Acknowledged parts "
        "are on disk.",
        {
            "upload_id": Field(UPLOAD_ID, "chosen by the client; reuse it to resume"),
            "index": Field(Int(0), "part number from 0"),
            "data": Field(PART_BYTES),
        },
        Struct({"index": Field(Int()), "size": Field(Int())}, name="PartStored"),
        (E.PART_TOO_BIG, E.PART_INVALID, E.FILE_TOO_BIG, E.QUOTA_EXCEEDED, E.DISK_FULL),
        rate_group="media",
    ),
    Method(
        "media.uploadStatus",
        "Which parts of an upload the node already has (resume after a lost connection).",
        {"upload_id": Field(UPLOAD_ID)},
        Struct(
            {
                "parts": Field(List(Int(), 1 << 20), "indexes present"),
                "part_size": Field(Int(), "bytes per part (all but the last)"),
                "expires": Field(Int(), "Unix time the unfinished upload is dropped (0: none)"),
            },
            name="UploadStatus",
        ),
        rate_group="media",
    ),
    Method(
        "media.complete",
        "Assemble the parts, verify size and SHA-256 and store the file (once per content). "
        "Returns the media id to attach to messages.",
        {
            "upload_id": Field(UPLOAD_ID),
            "parts": Field(Int(1), "number of parts"),
            "size": Field(Int(0), "bytes"),
            "sha256": Field(SHA256_HEX),
            # a bare name: no path separators or control characters a downloader could trip on
            "name": Field(Str(0, 255, r"[^/\\\x00-\x1f\x7f]*"), "file name (no folders)"),
            "mime": Field(Str(1, 127, r"[\w.+-]+/[\w.+-]+"), "e.g. image/png"),
            "opaque": Field(
                Bool(),
                "true: the bytes are encrypted on the device under a one-time key (a secret "
                "chat's file); anyone who names their SHA-256 may read them "
                "(media.downloadSecret), which is safe only for such ciphertext. Default false",
                False,
            ),
        },
        MediaInfo,
        (
            E.UPLOAD_NOT_FOUND,
            E.PART_MISSING,
            E.PART_INVALID,
            E.CHECKSUM_MISMATCH,
            E.FILE_TOO_BIG,
            E.QUOTA_EXCEEDED,
            E.DISK_FULL,
        ),
    ),
    Method(
        "media.info",
        "Metadata of a media the caller may read. A file sent from another node is fetched "
        "(verified) on the first media.info or media.download: the call waits up to 20 s "
        "for it, then answers MEDIA_FETCHING (retry after retry_after) while it goes on; "
        "PEER_UNREACHABLE if no node holding it can be reached, CHECKSUM_MISMATCH if the "
        "bytes served did not match the message's SHA-256 (nothing was kept).",
        {"media_id": Field(MEDIA_ID)},
        MediaInfo,
        FETCH_ERRORS,
    ),
    Method(
        "media.download",
        "A chunk of a media the caller may read (its uploader, or a member who can read a "
        "message carrying it). A file from another node is fetched first, as for media.info.",
        {
            "media_id": Field(MEDIA_ID),
            "offset": Field(Int(0)),
            "limit": Field(Int(1, 1 << 20), "bytes; capped at the node's download_chunk_max"),
        },
        Chunk,
        FETCH_ERRORS,
        rate_group="media",
    ),
    Method(
        "media.downloadSecret",
        "A chunk of an opaque file (media.complete opaque=true: a secret chat's file, "
        "encrypted on the device under a one-time key) named by its SHA-256 and size, for "
        "any signed-in user: the hash of such ciphertext reaches only the recipient, inside "
        "the secret message with the key, and cannot be guessed, so naming it is the grant. "
        "An ordinary file is never readable this way: its hash is answered MEDIA_NOT_FOUND "
        "exactly like one never seen. Not on this node and `node` names another node (the "
        "uploader's): fetched from there first (verified, kept here [secret] ttl), as "
        "media.download fetches a chat's file: MEDIA_FETCHING (retry after retry_after) "
        "while it runs.",
        {
            "sha256": Field(SHA256_HEX, "of the stored (encrypted) bytes"),
            "size": Field(Int(0), "bytes of the stored file"),
            "node": Field(NODE_ID, "the uploader's node id, to fetch from if need be", False),
            "offset": Field(Int(0)),
            "limit": Field(Int(1, 1 << 20), "bytes; capped at the node's download_chunk_max"),
        },
        Chunk,
        (
            E.MEDIA_NOT_FOUND,
            E.MEDIA_FETCHING,
            E.PEER_UNREACHABLE,
            E.CHECKSUM_MISMATCH,
            E.FILE_TOO_BIG,
            E.DISK_FULL,
        ),
        rate_group="media",
    ),
    Method(
        "admin.mediaStats",
        "Media counts and bytes on disk (admin socket).",
        {},
        Struct(
            {
                "media": Field(Int(), "finished uploads"),
                "blobs": Field(Int(), "distinct files"),
                "refs": Field(Int(), "message attachments"),
                "uploads_in_progress": Field(Int()),
                "files_on_disk": Field(Int()),
                "bytes_on_disk": Field(Int()),
                "partial_bytes": Field(Int(), "parts of unfinished uploads"),
            },
            name="MediaStats",
        ),
        access="admin",
    ),
    Method(
        "admin.mediaGc",
        "Expire abandoned uploads, drop media past the upload TTL that no message (not "
        "deleted for everyone) carries (opaque media: past [secret] ttl, at least the upload "
        "TTL), delete files nothing refers to (admin socket; also runs every gc_interval).",
        {},
        Struct(
            {
                "expired_uploads": Field(Int()),
                "dropped_media": Field(Int()),
                "removed_files": Field(Int()),
                "freed_bytes": Field(Int()),
            },
            name="MediaGc",
        ),
        access="admin",
    ),
]
