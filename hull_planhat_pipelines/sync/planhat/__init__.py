"""Hull profiles -> Planhat payloads: one builder per target (companies, endusers, user
activities, metrics), sharing ``shared``.

Pure: profile frames in, payload frames (``fingerprints.PAYLOAD_COLUMNS`` plus a few
identity columns) and ``SyncEvent`` skips out; the delivery engine sends the ``payload``
column keyed by ``key``. Each builder returns ``(payloads, events)``; ``events`` holds one
``outgoing.<kind>.skip`` per record refused (with its reason) and, last, one
``outgoing.<kind>.progress`` whose ``details`` count what was selected, skipped, unchanged and
left out by the filters (records outside the filters get no per-record log). Operator queries
(metrics, SQL activities) are run by the warehouse layer; the builders read their answers.

Mapping rules (the seed's, unless said otherwise):
- Only accounts in ``planhat.company_segments`` become companies, only users in
  ``planhat.contact_segments`` become endusers and send activities. A company depends on its
  account's segments alone: a user in a contact segment never brings its account along.
- ``account_attributes`` / ``user_attributes`` map a Hull attribute to a Planhat field; a
  dotted field is nested (``custom.ARR`` -> ``{"custom": {"ARR": ...}}``).
- A currency value ``{"amount": 1200.0, "currency": "USD"}`` is sent as its amount: Planhat
  number fields hold plain numbers, in the tenant's currency.
- No value (attribute absent, null, or an empty string) means the field is left out, never
  sent as null; ``0`` and ``false`` are values (the seed stripped every falsy value, which
  could not send a zero ARR). Hull keeps no null attributes (clearing one removes it), so a
  mapped field that held a value in the last successful delivery and has none now is sent
  once as null to clear it in Planhat. Only currently mapped fields are cleared (dropping a
  mapping never wipes Planhat data), and never ``owner``/``coOwner``.
- Identity fields are set from the profile, never from the mappings: companies carry
  ``externalId`` (the account's external id, their bulk-upsert keyable); endusers ``email``
  and/or ``externalId`` and ``companyExternalId`` (their account's external id). A mapping
  onto an identity field, onto ``owner``/``coOwner``, or onto a field Planhat sets by itself
  (``updatedAt``, ...) is a configuration error.
- Owner and co-owner: the value of ``owner_attribute`` / ``co_owner_attribute`` (None: not
  synced) must be the ``_id`` of a Planhat user that is not ``removed`` (``inactive`` users
  are still assignable); otherwise the whole account is skipped (``Invalid Owner ID`` /
  ``Invalid Co-Owner ID``) without any request. No value: no owner field, not a skip.
- Keys: a company's key is its external id; an enduser's is ``external_id:<id>`` when the
  user has an external id, else ``email:<email>`` (Planhat matches ``externalId`` before
  ``email``); an activity's is its ``event_id``; a metric's is
  ``<dimension_id>:<model>:<external_id>:<date>``. Two in-segment profiles with one key: the
  most recently updated is sent, the others skipped (duplicate), so a bulk request never
  names a record twice.
"""
