-- wrk script for bench/wrk_compare.sh: replay requests from a file, picked at random.
--
--   wrk -s bench/wrk/requests.lua URL -- REQUEST_FILE
--
-- REQUEST_FILE has one request per line: METHOD, TAB, PATH, TAB, BODY (may be
-- empty); bench/wrk_prep.py writes them. At the end, one JSON line with the
-- totals and latency percentiles of this wrk process (all its threads).

local requests = {}

function init(args)
    for line in io.lines(args[1]) do
        local method, path, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
        if method then
            local headers = {}
            if body == "" then
                body = nil
            else
                headers["Content-Type"] = "application/json"
            end
            requests[#requests + 1] = wrk.format(method, path, headers, body)
        end
    end
    assert(#requests > 0, "no requests in " .. args[1])
    math.randomseed(os.time() + #requests)
end

function request()
    return requests[math.random(#requests)]
end

function done(summary, latency, _)
    local e = summary.errors
    io.write(string.format(
        '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
            .. '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
        summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
