-- Written by bench/token_bench.py: every wrk request is the seed's token POST.
wrk.method = "POST"
wrk.body = '{"channel":"group1_alice_bob","uid":12345,"role":"publisher"}'
wrk.headers["Content-Type"] = "application/json"
