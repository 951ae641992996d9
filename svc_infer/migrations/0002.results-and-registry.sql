-- svc_infer's tables: the model registry (models, versions, traffic split, sticky study
-- assignments), the results of inference jobs, what the workers know about each study's
-- files (to announce StudyResultsReady once), job failures and the dead-letter index.
-- Unqualified names land in the `infer` schema (search_path set by the migration runner).

-- A model: its kind, its stable version and the split of new studies between versions.
-- Models are platform-wide (not per clinic); results are per clinic.
CREATE TABLE models (
    name                    text        PRIMARY KEY,
    kind                    smallint    NOT NULL,
    stable_version          bigint      NOT NULL DEFAULT 0,
    previous_stable_version bigint      NOT NULL DEFAULT 0,
    -- [{"version": 1, "weight": 70}, {"version": 2, "weight": 30}]; empty: all to stable.
    traffic_split           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now()
);

-- One exported SavedModel version (`s3://ml-models/<model>/<version>/`).
CREATE TABLE model_versions (
    model                 text        NOT NULL REFERENCES models (name),
    version               bigint      NOT NULL CHECK (version > 0),
    state                 smallint    NOT NULL,
    labels                text[]      NOT NULL,
    artifact_uri          text        NOT NULL,
    input_spec            jsonb       NOT NULL,
    preprocessing_version text        NOT NULL,
    create_time           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);

-- Which version serves a study, fixed at the study's first job so that all files of one
-- study see the same version even when the split changes meanwhile.
CREATE TABLE study_assignments (
    model       text        NOT NULL REFERENCES models (name),
    study_id    text        NOT NULL,
    clinic_id   text        NOT NULL,
    version     bigint      NOT NULL,
    arm         smallint    NOT NULL,
    assign_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, study_id)
);

-- One analysis of one file by one model version; a redelivered job finds its row here.
CREATE TABLE results (
    result_id             uuid             PRIMARY KEY,
    job_id                text             NOT NULL,
    clinic_id             text             NOT NULL,
    study_id              text             NOT NULL,
    file_id               text             NOT NULL,
    kind                  smallint         NOT NULL,
    model_name            text             NOT NULL,
    model_version         bigint           NOT NULL,
    preprocessing_version text             NOT NULL,
    arm                   smallint         NOT NULL,
    analysis              jsonb            NOT NULL,
    processed_key         text             NOT NULL DEFAULT '',
    queue_ms              double precision NOT NULL DEFAULT 0,
    preprocess_ms         double precision NOT NULL DEFAULT 0,
    inference_ms          double precision NOT NULL DEFAULT 0,
    total_ms              double precision NOT NULL DEFAULT 0,
    create_time           timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT results_one_per_file_and_version UNIQUE (file_id, model_name, model_version)
);

-- ListResults: a study's results oldest first, always filtered by clinic.
CREATE INDEX results_study_idx ON results (clinic_id, study_id, create_time, result_id);

-- A study as the workers know it: how many analysable files ingest said it has (the
-- largest study_file_count of its jobs) and how many results were announced already.
CREATE TABLE studies (
    study_id          text        PRIMARY KEY,
    clinic_id         text        NOT NULL,
    expected_files    integer     NOT NULL DEFAULT 0,
    announced_results integer     NOT NULL DEFAULT 0,
    announce_time     timestamptz
);

-- Every file a job has been seen for; a study is complete when each of them has a result.
CREATE TABLE study_files (
    study_id  text        NOT NULL REFERENCES studies (study_id),
    file_id   text        NOT NULL,
    kind      smallint    NOT NULL,
    job_id    text        NOT NULL,
    seen_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_id, file_id)
);

-- Failed attempts per job: the first failure time travels into the dead letter.
CREATE TABLE job_failures (
    job_id             text        PRIMARY KEY,
    clinic_id          text        NOT NULL,
    attempts           integer     NOT NULL,
    first_failure_time timestamptz NOT NULL,
    last_failure_time  timestamptz NOT NULL,
    last_error         text        NOT NULL
);

-- The dead-letter stream, indexed for ListDeadLetters/ReplayDeadLetter: one row per DLQ
-- message (keyed by its stream sequence, so indexing twice changes nothing).
CREATE TABLE dead_letters (
    dead_letter_id     uuid        PRIMARY KEY,
    stream_sequence    bigint      NOT NULL UNIQUE,
    subject            text        NOT NULL,
    clinic_id          text        NOT NULL,
    payload            bytea       NOT NULL,
    error              text        NOT NULL,
    attempts           integer     NOT NULL,
    first_failure_time timestamptz NOT NULL,
    last_failure_time  timestamptz NOT NULL,
    msg_id             text        NOT NULL DEFAULT '',
    headers            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    replay_time        timestamptz
);

CREATE INDEX dead_letters_clinic_idx
    ON dead_letters (clinic_id, last_failure_time DESC, dead_letter_id);
