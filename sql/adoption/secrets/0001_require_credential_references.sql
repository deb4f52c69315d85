-- mailpipe: no-transaction
-- Why: the end of the runbook's secrets step (`mailpipe provider adopt --finalize`): no
-- provider password stays in the database. credentials may hold only a reference
-- ({"secret_block": name} or {"password_env": VAR}, as on mailpipe's own databases), and the
-- app's password_encrypted column stays (the app's code still names it) but must be empty.
-- Refused, with nothing changed, while any plaintext remains: the first statement checks.

DO $$
DECLARE
    left_ text;
BEGIN
    SELECT string_agg(provider_name, ', ' ORDER BY provider_name) INTO left_
      FROM smtp_provider_configs
     WHERE nullif(password_encrypted, '') IS NOT NULL
        OR (credentials IS NOT NULL
            AND NOT (jsonb_typeof(credentials) = 'object'
                     AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb));
    IF left_ IS NOT NULL THEN
        RAISE EXCEPTION 'providers still hold a password in clear: %', left_
            USING HINT = 'run `mailpipe provider adopt` (it moves each into a Prefect Secret block '
                         'or checks an env var), then `mailpipe provider adopt --finalize`';
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_provider_configs'::regclass
                   AND conname = 'smtp_provider_configs_credentials_is_reference') THEN
        ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_credentials_is_reference
            CHECK (credentials IS NULL
                   OR (jsonb_typeof(credentials) = 'object'
                       AND credentials - 'secret_block' - 'password_env' = '{}'::jsonb)) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'smtp_provider_configs'::regclass
                   AND conname = 'smtp_provider_configs_no_plaintext_password') THEN
        ALTER TABLE smtp_provider_configs ADD CONSTRAINT smtp_provider_configs_no_plaintext_password
            CHECK (nullif(password_encrypted, '') IS NULL) NOT VALID;
    END IF;
END
$$;

ALTER TABLE smtp_provider_configs VALIDATE CONSTRAINT smtp_provider_configs_credentials_is_reference;
ALTER TABLE smtp_provider_configs VALIDATE CONSTRAINT smtp_provider_configs_no_plaintext_password;
