package featsieve.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads featsieve's mask topic to its end, keeps the current mask of every model
 * (docs/mask-format.md "Ordering"), then applies the mask of one model to feature maps:
 * one JSON object per line on stdin, one JSON object per line on stdout.
 *
 * <p>Usage: {@code MaskExample <bootstrap> <mask topic> <model id>}. A serving application
 * would keep polling instead of stopping at the end offset.
 */
public final class MaskExample {
    private static final ObjectMapper JSON = new ObjectMapper();

    /** The current mask per model id. */
    private final Map<String, JsonNode> masks = new HashMap<>();

    /** Ordering: a different incarnation is followed; otherwise (epoch, version) must grow. */
    static boolean isNewer(JsonNode candidate, JsonNode current) {
        if (current == null) {
            return true;
        }
        JsonNode a = candidate.get("incarnation"), b = current.get("incarnation");
        if (a != null && a.isTextual() && b != null && b.isTextual() && !a.asText().equals(b.asText())) {
            return true;
        }
        int byEpoch = Long.compare(candidate.get("epoch").asLong(), current.get("epoch").asLong());
        return byEpoch != 0 ? byEpoch > 0 : candidate.get("version").asLong() > current.get("version").asLong();
    }

    void offer(String model, byte[] value) {
        if (value == null) {
            return; // a tombstone: keep the mask held
        }
        try {
            JsonNode mask = JSON.readTree(value);
            if (mask.path("schema").asInt() != 1 || !mask.path("fields").isObject()) {
                System.err.println("skipping a mask of an unknown schema for " + model);
            } else if (isNewer(mask, masks.get(model))) {
                masks.put(model, mask);
            }
        } catch (java.io.IOException e) {
            System.err.println("skipping an invalid mask for " + model + ": " + e.getMessage());
        }
    }

    void readToEnd(String bootstrap, String topic) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed"); // fenced writers unseen
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaConsumer<String, byte[]> consumer =
                new KafkaConsumer<>(props, new StringDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = consumer.partitionsFor(topic).stream()
                    .map(p -> new TopicPartition(topic, p.partition())).collect(Collectors.toList());
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> end = consumer.endOffsets(parts);
            while (parts.stream().anyMatch(tp -> consumer.position(tp) < end.get(tp))) {
                for (ConsumerRecord<String, byte[]> rec : consumer.poll(Duration.ofMillis(500))) {
                    offer(rec.key(), rec.value());
                }
            }
        }
    }

    /** The matching rule: same JSON type and equal; numbers by exact value; null matches nothing. */
    static boolean matches(Object value, JsonNode closed) {
        if (value instanceof String s) {
            return closed.isTextual() && closed.asText().equals(s);
        }
        if (value instanceof Boolean b) {
            return closed.isBoolean() && closed.booleanValue() == b;
        }
        if (value instanceof Number n && closed.isNumber()) {
            BigDecimal c = closed.isIntegralNumber()
                    ? new BigDecimal(closed.bigIntegerValue()) : new BigDecimal(closed.doubleValue());
            return exact(n).compareTo(c) == 0;
        }
        return false;
    }

    private static BigDecimal exact(Number n) {
        if (n instanceof BigDecimal d) {
            return d;
        }
        if (n instanceof BigInteger i) {
            return new BigDecimal(i);
        }
        if (n instanceof Double || n instanceof Float) {
            return new BigDecimal(n.doubleValue()); // exact binary value, no decimal formatting
        }
        return BigDecimal.valueOf(n.longValue());
    }

    /** Dropped fields removed, closed values set to null, unknown fields passed unchanged. */
    static Map<String, Object> apply(JsonNode mask, Map<String, Object> features) {
        Map<String, Object> out = new LinkedHashMap<>();
        for (Map.Entry<String, Object> f : features.entrySet()) {
            JsonNode entry = mask == null ? null : mask.get("fields").get(f.getKey());
            if (entry == null) {
                out.put(f.getKey(), f.getValue());
            } else if (entry.path("keep").asBoolean(true)) {
                boolean closed = false;
                for (JsonNode c : entry.path("closed_values")) {
                    closed |= matches(f.getValue(), c);
                }
                out.put(f.getKey(), closed ? null : f.getValue());
            }
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: MaskExample <bootstrap> <mask topic> <model id>");
            System.exit(2);
        }
        MaskExample example = new MaskExample();
        example.readToEnd(args[0], args[1]);
        JsonNode mask = example.masks.get(args[2]);
        System.err.println(mask == null ? "no mask for " + args[2]
                : "mask of " + args[2] + ": epoch " + mask.get("epoch") + " version " + mask.get("version"));
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line = in.readLine(); line != null; line = in.readLine()) {
            @SuppressWarnings("unchecked")
            Map<String, Object> features = JSON.readValue(line, LinkedHashMap.class);
            System.out.println(JSON.writeValueAsString(apply(mask, features)));
        }
    }
}
