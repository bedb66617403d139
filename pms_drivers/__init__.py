"""PMS drivers: one `PmsDriver` Protocol (`base`), one module per PMS, a registry keyed by `spec.pms.type`.

    client = new_client(base_url, timeout=10, rate_per_second=1, burst=5)   # pms_drivers.transport
    driver = create_driver("OpenDental", client, base_url, credentials)     # pms_drivers.registry
    page = await with_retry(lambda: driver.appointments_since(cursor), policy=RetryPolicy())

Modules: `base` (Protocol and values), `errors` (the hierarchy), `transport` (the per-practice client
and its token bucket), `retry` (the one place that retries), `wire` (one call, errors mapped),
`opendental` + `stamp_cursor` (Open Dental REST), `bridge` (Eaglesoft/Dentrix agent), `records` (one
`PmsRecord` per PMS: name, driver, providerId rule, catalog words) and `registry` (builds drivers).
"""
