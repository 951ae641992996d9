-- The auth schema belongs to svc_auth alone: accounts, roles, tokens and the gateway check.
-- Other services never read it; they learn what they need from events and RPCs.
COMMENT ON SCHEMA auth IS 'svc_auth: accounts, roles, tokens and the gateway check';
