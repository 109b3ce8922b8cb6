"""Pure logic of the webhooks service: addresses, signatures, retry schedules, event envelopes. No I/O."""
