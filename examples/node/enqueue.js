// Enqueue a pgqueue job from Node.js: the SQL API is the contract.
//
//   cd examples/node && npm install
//   PGHOST=127.0.0.1 PGDATABASE=shop PGUSER=me node enqueue.js 42
//
// Connection settings come from libpq's environment variables (PGHOST, PGPORT,
// PGDATABASE, PGUSER, PGPASSWORD), which the pg package reads too. Arguments use
// pgqueue's tagged JSON (README "Argument format"): plain JSON, plus
// {"$type": "decimal" | "datetime" | "date" | "uuid" | ..., "value": "..."}.
// Prints the new job's id.
"use strict";

const { Client } = require("pg");

async function main() {
  const orderId = Number(process.argv[2] || 42);
  const client = new Client();
  await client.connect();
  try {
    await client.query("begin");
    // ... your own writes here: the job commits with them, or not at all ...
    const { rows } = await client.query(
      `select pgqueue.enqueue(
                task     => $1,
                args     => $2::jsonb,
                kwargs   => $3::jsonb,
                queue    => $4,
                priority => $5,
                run_at   => now() + make_interval(secs => $6)) as id`,
      [
        "examples.send_receipt",
        JSON.stringify([
          orderId,
          { "$type": "decimal", "value": "12.30" },
          { "$type": "datetime", "value": "2026-11-29T10:00:00+01:00" },
        ]),
        JSON.stringify({ note: "from node" }),
        "default",
        0,
        0,
      ]
    );
    await client.query("commit");
    console.log(rows[0].id);
  } catch (err) {
    await client.query("rollback").catch(() => {});
    throw err;
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
