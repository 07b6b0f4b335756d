"""The mail channel: people email the agent, the agent answers in the same email thread, once.

Pieces, one module each: `addresses` (addresses, Message-IDs, derived names), `registry`, `parsing` (MIME to text),
`smtp_server`, `replies` (composing and sending once), `activities`, `send_tool` and `channel` (the adapter).

- `MailStore`: one SQLite file, `THREADLINE_HOME/mail.sqlite3`, shared by the SMTP server and the consumers on a
  machine: the mailbox registry (address → room, queue), inbound mail received (queued or ignored, and why), the
  Message-ID → thread index (mail received and sent), and the record of replies sent.
- `MailServer`: the inbound SMTP server (aiosmtpd). RCPT for an address that is no registered mailbox → 550; a
  message over the size limit → 552; DATA is answered 250 only after the raw .eml is in room storage and a
  `MailJobWorkflow` is started on the mailbox's queue (job key derived from the Message-ID, so a duplicate
  delivery is one job); Temporal unreachable → 451 and the sender retries. Bounces and automatic mail are stored
  and recorded, never answered; a sender outside `--mail-allow` gets 550.
- `MailActivities` + `MailChannel`: `--channel mail:ADDRESS` consumes the mailbox's queue (a worker on the queue's
  task queue hosting the mail job workflow), turns each mail into a turn and sends the reply through
  `--smtp-relay`.

Exactly once: a reply's Message-ID is derived from its turn, and `send_mail_reply` checks the `sent` record before
the SMTP transaction and writes it right after the relay's 250. A worker killed before the relay accepted the
message sends it on retry (once); killed after the 250 but before the record was written (a window of one local
SQLite write), the retry sends a second copy with the same Message-ID, which most mail stores collapse.
"""
