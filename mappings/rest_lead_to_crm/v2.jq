# rest_lead_to_crm v2: as v1, plus
#   - `interested_model` normalised with clean_text (full-width -> half-width, trimmed,
#     whitespace collapsed), because partners type model names by hand;
#   - `channel`: "phone" for leads from the call centre, "online" for everyone else.
# Messages journaled under v1 can be replayed through v2; v1 stays for deliveries pinned to it.

def compact: map_values(select(. != null));

if (.source | type) != "string" then
  error("lead record has no source (it comes from the partner's API key)")
elif (.source_ref | type) != "string" then
  error("lead record has no source_ref")
else
  {
    entity: "lead",
    source,
    channel: (if .source == "callcenter" then "phone" else "online" end),
    source_ref,
    customer: ({name, mobile, province, city} | compact),
    interested_model: (.interested_model | clean_text),
    campaign_code,
    remark
  }
  | compact
end
