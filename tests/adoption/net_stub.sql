-- A stand-in for Supabase's pg_net where it is not installable (it has no Debian package): the
-- same names and signature, net.http_post queues a row in net.http_request_queue and returns
-- its id. Nothing sends it: a test that needs a request "completed" deletes its row, which is
-- what pg_net's worker does once the call is made.
CREATE SCHEMA IF NOT EXISTS net;

CREATE TABLE IF NOT EXISTS net.http_request_queue (
    id                   bigserial PRIMARY KEY,
    method               text NOT NULL,
    url                  text NOT NULL,
    headers              jsonb NOT NULL,
    body                 bytea,
    timeout_milliseconds integer NOT NULL
);

CREATE OR REPLACE FUNCTION net.http_post(
    url text,
    body jsonb DEFAULT '{}'::jsonb,
    params jsonb DEFAULT '{}'::jsonb,
    headers jsonb DEFAULT '{"Content-Type": "application/json"}'::jsonb,
    timeout_milliseconds integer DEFAULT 5000
) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    VALUES ('POST', url, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds)
    RETURNING id
$$;
