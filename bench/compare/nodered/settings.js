// Node-RED settings for bench/compare: a headless runtime on a loopback port, with this flow
// only. The harness copies this file into a userDir of its own and passes the rest as
// environment variables (BENCH_PORT, BENCH_AMQP_URL, BENCH_EXCHANGE, BENCH_SQLITE, ...).
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.BENCH_PORT, 10),
    flowFile: "flows.json",
    flowFilePretty: true,
    credentialSecret: false,
    // No editor and no admin API: the bench measures the flow, not the tooling around it.
    httpAdminRoot: false,
    disableEditor: true,
    // The same request limit as synchub's http.max_body_bytes.
    apiMaxLength: "10mb",
    // amqplib is the client every Node AMQP node is built on; the function node gets it here
    // because no published AMQP node waits for publisher confirms (see README.md beside this).
    functionGlobalContext: {
        amqplib: require("amqplib"),
    },
    functionExternalModules: false,
    logging: {
        console: { level: "warn", metrics: false, audit: false },
    },
    editorTheme: { tours: false },
    telemetry: { enabled: false },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
};
