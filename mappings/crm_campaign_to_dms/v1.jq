# crm_campaign_to_dms v1: CRM store campaign assignment event -> AMQP body published on exchange
# synchub.dealer with routing key dealer.<dealer_code>.campaign (INTERFACES.md §3).
#
# Input:  {"event": "campaign.assigned", "campaign_code", "name", "start_date", "end_date",
#          "dealer_code", "target_customers": [{"customer_id", "name", "mobile"}], "target_count"}
# Output: exactly the §3 campaign body; the hub's target_count (for DCS) is dropped.

if .event != "campaign.assigned" then
  error("unsupported campaign event \(.event | tojson): expected campaign.assigned")
elif (.campaign_code | type) != "string" then
  error("campaign event has no campaign_code")
elif (.dealer_code | type) != "string" then
  error("campaign event has no dealer_code")
elif (.target_customers | type) != "array" then
  error("campaign event has no target_customers array")
else
  {
    event,
    campaign_code,
    name,
    start_date,
    end_date,
    dealer_code,
    target_customers: [.target_customers[] | {customer_id, name, mobile}]
  }
end
