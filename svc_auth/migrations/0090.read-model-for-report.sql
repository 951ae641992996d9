-- Read model for svc_report (a contract, owned by svc_auth): who is told by e-mail that a
-- report is ready. Only verified, enabled accounts holding the clinician or admin role;
-- never password hashes or tokens. svc_report reads this view, never auth.users; every
-- query filters by clinic_id.
CREATE VIEW report_recipients AS
SELECT
    u.clinic_id,
    u.email,
    u.display_name,
    array(
        SELECT r.role FROM user_roles r
        WHERE r.user_id = u.user_id AND r.role IN ('admin', 'clinician')
        ORDER BY r.role
    ) AS roles
FROM users u
WHERE u.email_verified
  AND NOT u.disabled
  AND EXISTS (
      SELECT 1 FROM user_roles r
      WHERE r.user_id = u.user_id AND r.role IN ('admin', 'clinician')
  );

COMMENT ON VIEW report_recipients IS
    'Contract for svc_report: verified, enabled clinicians and admins of each clinic '
    '(e-mail, display name, those roles). Read-only.';
