-- The app's live database BEFORE the seed's hardening, condensed (issue 16).
--
-- Our own reconstruction of the shape docs/adopting-facts.md records from the app's migrations
-- and its generated types (not the app's code): Supabase roles and auth stubs, uuid keys, the
-- enum status, text priority, legacy columns, plaintext provider passwords, the app's triggers
-- that write communication_events (one setting template_id and no template_key), and RLS
-- policies written the way the app writes them. app_seed_hardening.sql on top gives the state
-- AFTER the seed; app_cron.sql schedules the four jobs where pg_cron is loaded.

-- Supabase's API roles are cluster-wide: create them once, whichever database comes first.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$$;

-- auth: what PostgREST sets per request (request.jwt.claims) read back as Supabase does.
CREATE SCHEMA auth;
CREATE TABLE auth.users (
    id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text
);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub', '')::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

CREATE TABLE public.profiles (
    id        uuid PRIMARY KEY,
    email     text,
    name      text,
    role      text NOT NULL DEFAULT 'staff',
    is_active boolean NOT NULL DEFAULT true
);

CREATE FUNCTION public.is_admin() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT EXISTS (SELECT 1 FROM profiles WHERE id = auth.uid() AND role = 'admin' AND is_active)
$$;

CREATE TABLE public.orders (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_number     text NOT NULL UNIQUE,
    customer_name    text,
    customer_email   text,
    status           text NOT NULL DEFAULT 'pending',
    order_type       text NOT NULL DEFAULT 'delivery',
    total_amount     numeric(12, 2) NOT NULL DEFAULT 0,
    delivery_address jsonb,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.customer_accounts (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text,
    email      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox.
CREATE TYPE public.communication_event_status AS ENUM ('queued', 'processing', 'sent', 'failed');

CREATE TABLE public.communication_events (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id              uuid REFERENCES public.orders (id) ON DELETE SET NULL,
    event_type            text NOT NULL,
    recipient_email       text,
    template_key          text,
    template_id           text,
    email_type            text DEFAULT 'transactional',
    external_id           text,
    status                public.communication_event_status NOT NULL DEFAULT 'queued',
    priority              text DEFAULT 'normal'
        CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    variables             jsonb,
    template_variables    jsonb,
    payload               jsonb,
    scheduled_at          timestamptz,
    retry_count           integer NOT NULL DEFAULT 0,
    last_error            text,
    error_message         text,
    delivery_status       text,
    email_provider        text,
    sent_at               timestamptz,
    processed_at          timestamptz,
    processing_started_at timestamptz,
    processing_time_ms    integer,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_communication_events_status ON public.communication_events (status);
CREATE INDEX idx_communication_events_queued_priority
    ON public.communication_events (status, priority, created_at) WHERE status = 'queued';
CREATE INDEX idx_communication_events_priority_status
    ON public.communication_events (priority, status, created_at);
CREATE INDEX idx_communication_events_order_id ON public.communication_events (order_id);
CREATE INDEX idx_communication_events_event_type ON public.communication_events (event_type);

CREATE TYPE public.communication_log_status AS ENUM ('sent', 'delivered', 'bounced', 'failed', 'skipped');

CREATE TABLE public.communication_logs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id          uuid REFERENCES public.communication_events (id) ON DELETE SET NULL,
    order_id          uuid NOT NULL,
    channel           text NOT NULL,
    recipient         text NOT NULL,
    status            public.communication_log_status NOT NULL,
    template_name     text,
    subject           text,
    provider_response jsonb,
    error_message     text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.email_delivery_confirmations (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    communication_event_id uuid REFERENCES public.communication_events (id) ON DELETE CASCADE,
    delivery_status        text NOT NULL
        CHECK (delivery_status IN ('sent', 'delivered', 'bounced', 'complained', 'failed')),
    provider_response      jsonb,
    delivered_at           timestamptz,
    created_at             timestamptz DEFAULT now(),
    updated_at             timestamptz DEFAULT now()
);

CREATE TABLE public.email_processing_queue (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id        uuid REFERENCES public.communication_events (id) ON DELETE CASCADE,
    priority        text DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    scheduled_for   timestamptz DEFAULT now(),
    attempts        integer DEFAULT 0,
    max_attempts    integer DEFAULT 3,
    status          text DEFAULT 'queued'
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    last_attempt_at timestamptz,
    next_retry_at   timestamptz,
    error_details   jsonb,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now()
);

-- SMTP tables as the app created them (password_encrypted holds the password in clear).
CREATE TABLE public.smtp_provider_configs (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 text NOT NULL UNIQUE,
    host                 text NOT NULL,
    port                 integer NOT NULL CHECK (port > 0 AND port <= 65535),
    username             text,
    password_encrypted   text,
    is_primary           boolean DEFAULT false,
    is_active            boolean DEFAULT true,
    daily_limit          integer DEFAULT 1000 CHECK (daily_limit > 0),
    hourly_limit         integer DEFAULT 100 CHECK (hourly_limit > 0),
    priority             integer DEFAULT 1 CHECK (priority > 0),
    health_score         integer DEFAULT 100 CHECK (health_score >= 0 AND health_score <= 100),
    last_health_check    timestamptz DEFAULT now(),
    failure_count        integer DEFAULT 0,
    consecutive_failures integer DEFAULT 0,
    last_failure_at      timestamptz,
    created_at           timestamptz DEFAULT now(),
    updated_at           timestamptz DEFAULT now()
);

CREATE TABLE public.smtp_connection_audit (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_name         text NOT NULL,
    connection_attempt_at timestamptz DEFAULT now(),
    connection_success    boolean NOT NULL,
    connection_time_ms    integer,
    error_message         text,
    source_ip             inet,
    user_agent            text,
    created_at            timestamptz DEFAULT now()
);

CREATE TABLE public.smtp_delivery_confirmations (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email_id          text NOT NULL,
    recipient_email   text NOT NULL,
    provider_used     text NOT NULL,
    delivery_status   text NOT NULL
        CHECK (delivery_status IN ('sent', 'delivered', 'bounced', 'complained', 'failed')),
    delivery_time_ms  integer,
    message_id        text,
    provider_response jsonb,
    created_at        timestamptz DEFAULT now()
);

-- The app's writers: trigger functions that insert events.
CREATE FUNCTION public.trigger_order_emails() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    -- The app names the template in template_id and leaves template_key NULL.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO communication_events (order_id, event_type, recipient_email, template_id,
                                          email_type, status, variables)
        VALUES (NEW.id, 'order_confirmation', NEW.customer_email, 'order_confirmation',
                'transactional', 'queued',
                jsonb_build_object('customerName', NEW.customer_name,
                                   'orderNumber', NEW.order_number,
                                   'orderTotal', NEW.total_amount::text));
    ELSIF OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO communication_events (order_id, event_type, recipient_email, template_id,
                                          email_type, status, priority, variables)
        VALUES (NEW.id, 'order_status_update', NEW.customer_email,
                'order_status_' || NEW.status, 'transactional', 'queued', 'high',
                jsonb_build_object('customerName', NEW.customer_name,
                                   'orderNumber', NEW.order_number,
                                   'oldStatus', OLD.status, 'newStatus', NEW.status));
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER trigger_order_emails_insert AFTER INSERT ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.trigger_order_emails();
CREATE TRIGGER trigger_order_emails_update AFTER UPDATE ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.trigger_order_emails();

CREATE FUNCTION public.trigger_customer_welcome_email() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO communication_events (event_type, recipient_email, template_key, variables,
                                      template_variables, status, priority)
    VALUES ('customer_welcome', NEW.email, 'welcome_customer',
            jsonb_build_object('customerName', NEW.name, 'customerEmail', NEW.email),
            jsonb_build_object('customerName', NEW.name), 'queued', 'high');
    RETURN NEW;
END;
$$;
CREATE TRIGGER trigger_customer_welcome_email AFTER INSERT ON public.customer_accounts
    FOR EACH ROW EXECUTE FUNCTION public.trigger_customer_welcome_email();

-- Payload-only writer (the oldest shape: template data in payload).
CREATE FUNCTION public.recover_failed_registration(p_email text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_id uuid;
BEGIN
    INSERT INTO communication_events (event_type, recipient_email, payload, status)
    VALUES ('registration_recovery', p_email, jsonb_build_object('email', p_email), 'queued')
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- Triggers on the outbox itself.
CREATE FUNCTION public.trigger_enhanced_email_processing() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NEW.status = 'queued' THEN
        INSERT INTO public.email_processing_queue (event_id, priority, scheduled_for)
        VALUES (NEW.id,
                CASE WHEN NEW.priority IN ('high', 'urgent') OR NEW.event_type = 'customer_welcome'
                     THEN 'high' WHEN NEW.priority = 'low' THEN 'low' ELSE 'normal' END,
                now());
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER trigger_enhanced_email_processing
    AFTER INSERT OR UPDATE ON public.communication_events
    FOR EACH ROW EXECUTE FUNCTION public.trigger_enhanced_email_processing();

CREATE FUNCTION public.trigger_instant_email_processing() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    PERFORM pg_notify('instant_email_processing',
                      jsonb_build_object('event_id', NEW.id, 'event_type', NEW.event_type,
                                         'recipient', NEW.recipient_email,
                                         'timestamp', now())::text);
    RETURN NEW;
END;
$$;
CREATE TRIGGER trigger_instant_email_processing
    AFTER INSERT ON public.communication_events
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION public.trigger_instant_email_processing();

CREATE FUNCTION public.handle_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER handle_updated_at_communication_events
    BEFORE UPDATE ON public.communication_events
    FOR EACH ROW EXECUTE FUNCTION public.handle_updated_at();

-- RLS as the app wrote it.
ALTER TABLE public.communication_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view communication_events" ON public.communication_events
    FOR SELECT USING (is_admin());
CREATE POLICY "Service role manage communication_events" ON public.communication_events
    FOR ALL USING (auth.role() = 'service_role') WITH CHECK (auth.role() = 'service_role');

ALTER TABLE public.communication_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view communication logs" ON public.communication_logs
    FOR SELECT USING (is_admin());
CREATE POLICY "Service roles can manage communication logs" ON public.communication_logs
    FOR ALL USING (auth.role() = 'service_role');

ALTER TABLE public.email_delivery_confirmations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can manage delivery confirmations" ON public.email_delivery_confirmations
    FOR ALL USING (is_admin());

ALTER TABLE public.email_processing_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view processing queue" ON public.email_processing_queue
    FOR SELECT USING (is_admin());
CREATE POLICY "Service roles can manage email processing queue" ON public.email_processing_queue
    FOR ALL USING (auth.role() = 'service_role') WITH CHECK (auth.role() = 'service_role');

ALTER TABLE public.smtp_provider_configs ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can manage SMTP providers" ON public.smtp_provider_configs
    FOR ALL USING (is_admin()) WITH CHECK (is_admin());
CREATE POLICY "Service roles can manage SMTP providers" ON public.smtp_provider_configs
    FOR ALL USING (auth.role() = 'service_role') WITH CHECK (auth.role() = 'service_role');

ALTER TABLE public.smtp_connection_audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view connection audit" ON public.smtp_connection_audit
    FOR SELECT USING (is_admin());
CREATE POLICY "Service roles can insert connection audit" ON public.smtp_connection_audit
    FOR INSERT WITH CHECK (auth.role() = 'service_role');

ALTER TABLE public.smtp_delivery_confirmations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view delivery confirmations" ON public.smtp_delivery_confirmations
    FOR SELECT TO authenticated USING (is_admin());
CREATE POLICY "Service roles can manage delivery confirmations"
    ON public.smtp_delivery_confirmations FOR ALL TO service_role USING (true) WITH CHECK (true);

ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Users can view own profile" ON public.profiles
    FOR SELECT USING (id = auth.uid() OR is_admin());

-- Supabase grants the API roles every table; RLS decides the rows.
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO anon, authenticated, service_role;

-- Data: two providers with passwords in clear, and events from every writer.
INSERT INTO public.smtp_provider_configs (name, host, port, username, password_encrypted,
                                          is_primary, priority)
VALUES ('primary-smtp', 'smtp.example.com', 587, 'shop@example.com', 'fixture-plaintext-1', true, 1),
       ('backup-smtp', 'smtp.backup.example.net', 465, 'shop', 'fixture-plaintext-2', false, 2);

INSERT INTO public.orders (order_number, customer_name, customer_email, total_amount)
VALUES ('ORD-0001', 'Ada', 'ada@example.com', 12.50),
       ('ORD-0002', 'Grace', 'grace@example.com', 40.00),
       ('ORD-0003', 'Edsger', 'edsger@example.com', 7.25);
UPDATE public.orders SET status = 'confirmed' WHERE order_number = 'ORD-0002';
INSERT INTO public.customer_accounts (name, email) VALUES ('Barbara', 'barbara@example.com');
SELECT public.recover_failed_registration('linus@example.com');

-- History the old pipeline left: a sent event and a failed one.
UPDATE public.communication_events
   SET status = 'sent', sent_at = now(), email_provider = 'primary-smtp', delivery_status = 'sent'
 WHERE order_id = (SELECT id FROM public.orders WHERE order_number = 'ORD-0001')
   AND event_type = 'order_confirmation';
UPDATE public.communication_events
   SET status = 'failed', error_message = 'SMTP 550 mailbox unavailable', retry_count = 3
 WHERE event_type = 'registration_recovery';
