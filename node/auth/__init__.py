"""Accounts, devices and sign-in (login codes, device keys, 2FA passwords, invites)."""
