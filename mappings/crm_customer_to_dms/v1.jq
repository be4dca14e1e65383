# crm_customer_to_dms v1: CRM store customer change event -> AMQP body published on exchange
# synchub.dealer with routing key dealer.<dealer_code>.customer (INTERFACES.md §3).
#
# Input:  {"event", "customer_id", "version", "changed_fields", "source_system", "customer"}
#         plus whatever internal fields the CRM store adds.
# Output: {"event", "customer_id", "version", "changed_fields", "customer"}; internal fields
#         (source_system, ...) are dropped. Not echoing a change back to the dealer whose DMS
#         made it is the route's job (its predicate sees source_system), not this mapping's.

# The canonical customer fields, in the order partners see them.
def customer_fields:
  ["customer_id", "name", "mobile", "id_no", "gender", "birth_date", "province", "city",
   "address", "email", "dealer_code", "updated_at"];

# Canonical fields present in the record, in canonical order. A present null is kept: for an
# update it means "cleared", which the DMS must learn.
def canonical_customer:
  . as $c
  | reduce (customer_fields[] | select(. as $f | $c | has($f))) as $f ({}; . + {($f): $c[$f]});

if (.customer | type) != "object" then
  error("customer change event has no customer object")
elif .event != "customer.created" and .event != "customer.updated" then
  error("unsupported customer event \(.event | tojson): expected customer.created or customer.updated")
elif (.customer_id | type) != "string" then
  error("customer change event has no customer_id")
elif (.version | type) != "number" then
  error("customer change event has no version number")
elif .event == "customer.updated" and (.changed_fields | type) != "array" then
  error("customer.updated event has no changed_fields array")
else
  (.customer | canonical_customer) as $customer
  | customer_fields as $known
  | {
      event,
      customer_id,
      version,
      changed_fields: (
        if .event == "customer.created" then
          # Everything is new: all fields the record has.
          $customer | keys_unsorted
        else
          # Only canonical names; internal ones would mean nothing to a DMS.
          [.changed_fields[] | select(. as $f | $known | index($f) != null)]
        end
      ),
      customer: $customer
    }
end
