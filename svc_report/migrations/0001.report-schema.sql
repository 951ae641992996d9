-- The report schema belongs to svc_report alone: reports: HTML/PDF, archive, MIS delivery, e-mail.
-- Other services never read it; they learn what they need from events and RPCs.
COMMENT ON SCHEMA report IS 'svc_report: reports: HTML/PDF, archive, MIS delivery, e-mail';
