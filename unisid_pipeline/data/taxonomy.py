"""A curated 3-level ad taxonomy (vertical > category > sub-category) with words for ad text.

Used by the synthetic ad world so that ad text carries real meaning for a text encoder, and the
category path is ground truth for SID quality. Larger taxonomies than the curated one get
generated names (clearly marked "Segment ...").
"""
from __future__ import annotations

from dataclasses import dataclass

# vertical -> category -> sub-categories. Each sub-category name is also the product noun.
CURATED: dict[str, dict[str, list[str]]] = {
    "Beauty": {
        "Makeup": ["Lipstick", "Mascara", "Foundation", "Eyeshadow Palette"],
        "Skincare": ["Face Serum", "Moisturizer", "Sunscreen", "Cleanser"],
        "Haircare": ["Shampoo", "Hair Dryer", "Hair Oil", "Curling Iron"],
        "Fragrance": ["Eau de Parfum", "Body Mist", "Cologne", "Scented Candle"],
    },
    "Electronics": {
        "Phones": ["Smartphone", "Phone Case", "Wireless Charger", "Screen Protector"],
        "Audio": ["Wireless Earbuds", "Bluetooth Speaker", "Noise Cancelling Headphones", "Soundbar"],
        "Computers": ["Gaming Laptop", "Mechanical Keyboard", "4K Monitor", "External SSD"],
        "Smart Home": ["Smart Bulb", "Video Doorbell", "Robot Vacuum", "Smart Thermostat"],
    },
    "Travel": {
        "Flights": ["Economy Flight", "Business Class Fare", "Weekend Getaway Flight", "Round Trip Deal"],
        "Hotels": ["Beach Resort", "City Hotel", "Mountain Lodge", "Boutique Hotel"],
        "Experiences": ["Guided City Tour", "Scuba Diving Trip", "Wine Tasting Tour", "Safari Adventure"],
        "Luggage": ["Carry-On Suitcase", "Travel Backpack", "Packing Cubes", "Hardshell Luggage Set"],
    },
    "Gaming": {
        "Mobile Games": ["Puzzle Game", "Strategy Game", "Racing Game", "Role-Playing Game"],
        "Consoles": ["Game Console", "Wireless Controller", "VR Headset", "Handheld Console"],
        "PC Gaming": ["Gaming Mouse", "Gaming Chair", "Graphics Card", "Gaming Headset"],
        "Board Games": ["Strategy Board Game", "Party Card Game", "Jigsaw Puzzle", "Family Board Game"],
    },
    "Finance": {
        "Banking": ["Checking Account", "High-Yield Savings", "Credit Card", "Student Account"],
        "Investing": ["Stock Trading App", "Robo-Advisor", "Retirement Fund", "Crypto Exchange"],
        "Insurance": ["Car Insurance", "Travel Insurance", "Pet Insurance", "Life Insurance"],
        "Loans": ["Personal Loan", "Mortgage Refinance", "Auto Loan", "Small Business Loan"],
    },
    "Food & Drink": {
        "Groceries": ["Organic Produce Box", "Grocery Delivery", "Snack Subscription", "Pantry Staples"],
        "Restaurants": ["Pizza Delivery", "Sushi Restaurant", "Burger Combo", "Vegan Bistro"],
        "Beverages": ["Cold Brew Coffee", "Green Tea", "Craft Beer", "Sparkling Water"],
        "Meal Kits": ["Family Meal Kit", "Keto Meal Plan", "Vegetarian Meal Kit", "Protein Meal Prep"],
    },
    "Fashion": {
        "Shoes": ["Running Shoes", "Leather Boots", "Sneakers", "High Heels"],
        "Clothing": ["Winter Jacket", "Denim Jeans", "Summer Dress", "Yoga Pants"],
        "Accessories": ["Leather Handbag", "Sunglasses", "Silk Scarf", "Wallet"],
        "Jewelry": ["Gold Necklace", "Diamond Ring", "Silver Earrings", "Smartwatch Band"],
    },
    "Home": {
        "Furniture": ["Sofa", "Office Chair", "Dining Table", "Bed Frame"],
        "Kitchen": ["Air Fryer", "Espresso Machine", "Chef Knife Set", "Blender"],
        "Garden": ["Lawn Mower", "Patio Set", "Garden Hose", "Seed Starter Kit"],
        "Decor": ["Wall Art", "Area Rug", "Table Lamp", "Throw Pillows"],
    },
    "Education": {
        "Languages": ["Spanish Course", "English Tutoring", "Japanese App", "French Lessons"],
        "Coding": ["Python Bootcamp", "Web Development Course", "Data Science Program", "Coding for Kids"],
        "Test Prep": ["SAT Prep", "GMAT Course", "Bar Exam Review", "IELTS Practice"],
        "Creative Skills": ["Photography Class", "Guitar Lessons", "Drawing Course", "Video Editing Course"],
    },
    "Automotive": {
        "Cars": ["Electric SUV", "Hybrid Sedan", "Pickup Truck", "Compact Car"],
        "Parts": ["All-Season Tires", "Car Battery", "Brake Pads", "LED Headlights"],
        "Services": ["Oil Change", "Car Wash Plan", "Roadside Assistance", "Auto Detailing"],
        "Accessories": ["Dash Cam", "Car Phone Mount", "Seat Covers", "Roof Cargo Box"],
    },
    "Health": {
        "Fitness": ["Gym Membership", "Home Treadmill", "Dumbbell Set", "Fitness Tracker"],
        "Nutrition": ["Whey Protein", "Multivitamin", "Meal Replacement Shake", "Omega-3 Capsules"],
        "Wellness": ["Meditation App", "Massage Gun", "Sleep Aid", "Aromatherapy Diffuser"],
        "Pharmacy": ["Allergy Relief", "Pain Reliever", "Cold and Flu Medicine", "First Aid Kit"],
    },
    "Sports": {
        "Outdoor": ["Camping Tent", "Hiking Boots", "Sleeping Bag", "Trekking Poles"],
        "Team Sports": ["Soccer Ball", "Basketball Shoes", "Baseball Glove", "Hockey Stick"],
        "Cycling": ["Road Bike", "Bike Helmet", "Electric Bike", "Cycling Jersey"],
        "Water Sports": ["Paddle Board", "Swim Goggles", "Wetsuit", "Kayak"],
    },
}

LANDING_TYPES = ("web_page", "app_install", "lead_form", "store_visit", "video")

ADJECTIVES = (
    "Premium", "Best-Selling", "New", "Award-Winning", "Eco-Friendly", "Limited Edition", "Pro",
    "Ultra-Light", "Classic", "Smart", "Deluxe", "Everyday", "Compact", "Luxury", "Budget",
)
PROMOS = (
    "Save 20% today", "Free shipping on all orders", "Buy one, get one free", "Limited-time offer",
    "New customers get 30% off", "Sign up and get a free gift", "Flash sale ends tonight",
    "Members save more", "Try it free for 30 days", "Holiday deal",
)
AUDIENCES = (
    "busy professionals", "students", "families", "beginners", "enthusiasts", "seniors",
    "new parents", "outdoor lovers", "small businesses", "gamers",
)
BRAND_SYLLABLES = (
    "lu", "ma", "no", "vi", "ra", "ko", "zen", "ta", "el", "ori", "sa", "qu", "ix", "bel", "dor",
    "fin", "gal", "hal", "jin", "kar", "lor", "mir", "nex", "pol", "ryn", "sol", "tor", "ulm",
)


@dataclass(frozen=True)
class Taxonomy:
    """A 3-level taxonomy flattened to leaves.

    `leaves[i] = (vertical, category, subcategory)`; `leaf_category[i]` and `leaf_vertical[i]`
    are integer ids of the leaf's category and vertical.
    """

    verticals: tuple[str, ...]
    categories: tuple[tuple[str, str], ...]  # (vertical, category)
    leaves: tuple[tuple[str, str, str], ...]
    leaf_category: tuple[int, ...]
    leaf_vertical: tuple[int, ...]
    category_vertical: tuple[int, ...]
    generated: bool

    def path(self, leaf: int) -> str:
        return " > ".join(self.leaves[leaf])


def build_taxonomy(n_verticals: int, categories_per_vertical: int, subcategories_per_category: int) -> Taxonomy:
    """Take the first n of each level from the curated taxonomy; generate names beyond it."""
    for name, value in (
        ("n_verticals", n_verticals),
        ("categories_per_vertical", categories_per_vertical),
        ("subcategories_per_category", subcategories_per_category),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    curated_v = list(CURATED)
    generated = False
    verticals: list[str] = []
    categories: list[tuple[str, str]] = []
    leaves: list[tuple[str, str, str]] = []
    leaf_category: list[int] = []
    leaf_vertical: list[int] = []
    category_vertical: list[int] = []
    for v in range(n_verticals):
        if v < len(curated_v):
            vname = curated_v[v]
            cats = list(CURATED[vname])
        else:
            vname, cats, generated = f"Segment {v}", [], True
        verticals.append(vname)
        for c in range(categories_per_vertical):
            if c < len(cats):
                cname = cats[c]
                subs = CURATED[vname][cname]
            else:
                cname, subs, generated = f"{vname} Line {c}", [], True
            categories.append((vname, cname))
            category_vertical.append(v)
            for s in range(subcategories_per_category):
                if s < len(subs):
                    sname = subs[s]
                else:
                    sname, generated = f"{cname} Item {s}", True
                leaves.append((vname, cname, sname))
                leaf_category.append(len(categories) - 1)
                leaf_vertical.append(v)
    return Taxonomy(
        verticals=tuple(verticals),
        categories=tuple(categories),
        leaves=tuple(leaves),
        leaf_category=tuple(leaf_category),
        leaf_vertical=tuple(leaf_vertical),
        category_vertical=tuple(category_vertical),
        generated=generated,
    )
