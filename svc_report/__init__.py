"""svc_report: reports: HTML/PDF, archive, MIS delivery, e-mail."""
