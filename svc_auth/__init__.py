"""svc_auth: accounts, roles, tokens and the gateway check."""
