"""Push notifications for devices that are not connected (UnifiedPush or any webhook).

``store`` (tables and SQL), ``payload`` (the sealed JSON), ``notifier`` (coalescing, the
bounded queue, workers, retries), ``service`` (handlers and triggers).
"""
