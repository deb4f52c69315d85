-- active_templates --
-- The active version of each of the given template keys
SELECT template_key, version, subject, text_body, html_body, from_address
  FROM email_templates
 WHERE template_key = ANY(%s) AND active;

-- retire_template_versions --
-- Deactivate every version of a template (before activating a new one, same transaction)
UPDATE email_templates SET active = false
 WHERE template_key = %(template_key)s AND active;

-- insert_template_version --
-- Add the next version of a template, active
INSERT INTO email_templates (template_key, version, subject, text_body, html_body,
                             from_address, active)
SELECT %(template_key)s,
       coalesce(max(version), 0) + 1,
       %(subject)s, %(text_body)s, %(html_body)s, %(from_address)s, true
  FROM email_templates WHERE template_key = %(template_key)s
RETURNING id, template_key, version;
