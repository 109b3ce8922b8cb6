"""Identity rules without I/O: passwords, emails, tokens, signing keys, roles, throttling, pagination."""
