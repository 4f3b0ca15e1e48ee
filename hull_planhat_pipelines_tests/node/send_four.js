// Sends user traits, account traits, a link and a track through Hull's official Node client
// (npm "hull") to the firehose named in the JSON argument, then prints one JSON line: the
// outcome of each send ("ok" or the error), in that order.
"use strict";

const Hull = require("hull");

const spec = JSON.parse(process.argv[2]);
const client = new Hull.Client({
  id: spec.connector_id,
  secret: spec.connector_secret,
  organization: spec.organization,
  firehoseUrl: spec.firehose_url,
  flushAt: 4, // one batch with the four messages, at once, rather than after the 1 s timer
});
const user = client.asUser(spec.user);
const sends = [
  user.traits(spec.user_traits),
  client.asAccount(spec.account).traits(spec.account_traits),
  user.account(spec.account).traits({}),
  user.track(spec.event.name, spec.event.properties, spec.event.context),
];

Promise.allSettled(sends).then((results) => {
  const outcomes = results.map((r) =>
    r.status === "fulfilled" ? "ok" : String((r.reason && r.reason.message) || r.reason),
  );
  process.stdout.write(`${JSON.stringify(outcomes)}\n`);
  process.exit(0);
});
