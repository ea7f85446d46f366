-- wrk script for bench/soak.sh: PUTs and GETs of small objects through one route of kagi's
-- proxy to `kagi sample-backend`, one PUT for two GETs, on NAMES objects whose names start with
-- PREFIX. Each object's body is a pure function of its name (200 to 4,099 bytes), so any
-- answer to a GET can be checked whatever PUT it follows: it must be exactly the body of the
-- name it starts with. The objects must exist before the run (bench/soak.sh PUTs them first).
--
--   wrk -s bench/soak.lua URL -- PREFIX NAMES DELAY_MS
--
-- DELAY_MS: each connection waits that long before each request (wrk's `delay`; not part of
-- the latency wrk measures), which keeps the load modest. done() prints one line:
-- `soak puts=… gets=… bad=…`, bad counting GET answers that are not the expected bytes.

local prefix, names, pause = "soak-", 32, 0
local pattern
local bodies = {}
local counter = 0
puts, gets, bad = 0, 0, 0

local function body_of(prefix, n)
    local head = prefix .. n .. ":"
    local size = 200 + (n * 131) % 3900
    local fill = string.char(string.byte("a") + n % 26)
    return head .. string.rep(fill, size - #head)
end

function init(args)
    prefix = args[1] or prefix
    names = tonumber(args[2] or names)
    pause = tonumber(args[3] or pause)
    pattern = "^" .. prefix:gsub("%p", "%%%0") .. "(%d+):"
    for n = 0, names - 1 do
        bodies[n] = body_of(prefix, n)
    end
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function delay()
    return pause
end

function request()
    counter = counter + 1
    local n = math.random(0, names - 1)
    local path = "/objects/" .. prefix .. n
    if counter % 3 == 0 then
        return wrk.format("PUT", path, {["Content-Type"] = "application/octet-stream"}, bodies[n])
    end
    return wrk.format("GET", path)
end

function response(status, headers, body)
    if status == 201 then
        puts = puts + 1
        return
    end
    gets = gets + 1
    if status ~= 200 then
        return -- wrk counts it as non-2xx
    end
    local n = tonumber(string.match(body, pattern))
    if n == nil or bodies[n] ~= body then
        bad = bad + 1
    end
end

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function done(summary, latency, requests)
    local p, g, b = 0, 0, 0
    for _, thread in ipairs(threads) do
        p = p + thread:get("puts")
        g = g + thread:get("gets")
        b = b + thread:get("bad")
    end
    io.write(string.format("soak puts=%d gets=%d bad=%d\n", p, g, b))
end
